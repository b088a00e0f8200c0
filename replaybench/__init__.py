"""replaybench: audit the machine-learning models that Android apps run on the phone.

The package is a typed library (``replaybench.extract``, ``replaybench.replay``, ``replaybench.evaluate``,
``replaybench.distill``) with a thin command-line front end in ``replaybench.cli``.
"""

__version__ = "0.1.0"
