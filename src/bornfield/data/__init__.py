"""Dataset assembly (extxyz with the DESIGN.md label keys) and dataset reports."""

from bornfield.data.dataset import assemble, label_statistics, labelled_atoms, read_dataset, write_dataset

__all__ = ["assemble", "label_statistics", "labelled_atoms", "read_dataset", "write_dataset"]
