"""The example's own span attribute names (sessiontrace's names are in ``sessiontrace.semconv``)."""

from __future__ import annotations

from typing import Final

CLAIM_ID: Final = "claims.claim.id"
CLAIM_POLICY: Final = "claims.policy"
CLAIM_LINE: Final = "claims.line"
"""Line of business: motor, property, liability, health."""
CLAIM_AMOUNT: Final = "claims.amount"
CLAIM_SEVERITY: Final = "claims.severity"
"""The severity the claim was triaged to (the model's or, after review, the reviewer's)."""
CLAIM_DECIDED_BY: Final = "claims.decided_by"
"""``model`` or ``reviewer``."""
RESERVE_ID: Final = "ledger.reserve.id"
RESERVE_AMOUNT: Final = "ledger.reserve.amount"
CLAIM_SEVERITY_PROBABILITIES: Final = "claims.severity.probabilities"
"""Every severity's probability as the classifier saw it (``["low 0.04", ...]``)."""
