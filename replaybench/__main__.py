from replaybench.cli import run

run()
