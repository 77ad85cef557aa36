"""bornfield: ion migration under electric fields with NN potentials and NN Born charges."""

__version__ = "0.1.0"
