"""Tools for checking mixnorm without a GPU: :mod:`mixnorm.testing.opcount` counts the
device operations the GPU code paths would dispatch, by running them on NumPy."""
