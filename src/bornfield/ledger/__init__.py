"""The DFT label ledger: committed labels that only grow, a queue of structures to label,
and the budgeted labeller (``bornfield label``)."""

from bornfield.ledger.store import Ledger, LedgerSpec, identity_of, settings_for_kind

__all__ = ["Ledger", "LedgerSpec", "identity_of", "settings_for_kind"]
