"""Which bundles replay accepts: one check of a bundle's verdicts before any item runs.

A bundle carries verdicts from extract: its end-to-end ``fidelity`` against the app's own outputs, and
the provenance of its preprocessing. Replay refuses a bundle whose numbers would not be what the app
computes unless the user says they accept that, and then the predictions record it (``run.json`` and the
Parquet parts' metadata, see ``replaybench.replay.runner``).
"""

from __future__ import annotations

from replaybench.bundle import Bundle
from replaybench.errors import UnfaithfulBundleError, UnresolvedPreprocessError


def check_bundle_admissible(bundle: Bundle, *, allow_unfaithful: bool, accept_unresolved: bool) -> list[str]:
    """Raise a typed error when replay must refuse ``bundle``; return the notes of what was accepted.

    - preprocessing the trace did not determine (``trace_unresolved``, the likelier root cause, so it is
      checked first): refused with ``UnresolvedPreprocessError`` (exit 15) unless ``accept_unresolved``;
    - fidelity ``failed`` (replay does not reproduce the app's outputs on the traced invokes): refused
      with ``UnfaithfulBundleError`` (exit 16) unless ``allow_unfaithful``.

    Example::

        notes = check_bundle_admissible(lb.bundle, allow_unfaithful=False, accept_unresolved=False)
    """
    notes: list[str] = []

    # --- unresolved preprocessing: no candidate reproduced the captured input tensors ---
    pre = bundle.preprocess
    if pre is not None and pre.unresolved:
        if not accept_unresolved:
            raise UnresolvedPreprocessError(
                f"the preprocessing of {bundle.name} (max error {pre.residual.get('max_error', float('nan')):.3g}, "
                f"tolerance {pre.residual.get('tolerance', float('nan')):.3g}) was not determined by its trace: "
                "its predictions would not be what the app computes",
                hint="give the preprocessing ('replaybench extract ... --preprocess MODEL=SPEC' or 'replaybench "
                "convert ... --preprocess SPEC'), record more invokes, or replay anyway with --accept-unresolved",
            )
        notes.append("preprocessing unresolved by its trace: replayed with --accept-unresolved")

    # --- end-to-end fidelity against the app's own outputs ---
    fid = bundle.fidelity
    if fid is not None and fid.verdict == "failed":
        if not allow_unfaithful:
            raise UnfaithfulBundleError(
                f"bundle {bundle.name} does not reproduce the app's own outputs on the traced invokes: "
                f"{fid.reason}",
                hint="see 'replaybench inspect' on the bundle; fix its preprocessing (extract --preprocess), "
                "or replay it anyway with --allow-unfaithful (the predictions then record that)",
            )
        notes.append(f"fidelity failed, replayed with --allow-unfaithful: {fid.reason}")

    return notes
