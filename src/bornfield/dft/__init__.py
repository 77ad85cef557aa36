"""DFT/DFPT labels with Quantum ESPRESSO: pseudopotentials, inputs, runner, parsers, QC.

Public entry points: :func:`read_ph_output` (Born charges ``[atom, field α, force β]``,
ASR-corrected, with the raw tensor, residual and ε∞), :func:`read_pw_output`,
:class:`DFTJob` (one job directory named by its ``dft_id``), :class:`DFTSettings`,
:func:`provision_pseudopotentials`.
"""

from bornfield.dft.inputs import DFTSettings, compute_dft_id
from bornfield.dft.parsers import PhOutput, PwOutput, read_ph_output, read_pw_output, read_tensors_xml
from bornfield.dft.pseudopotentials import provision_pseudopotentials
from bornfield.dft.runner import DFTJob, RunnerOptions

__all__ = [
    "DFTJob",
    "DFTSettings",
    "PhOutput",
    "PwOutput",
    "RunnerOptions",
    "compute_dft_id",
    "provision_pseudopotentials",
    "read_ph_output",
    "read_pw_output",
    "read_tensors_xml",
]
