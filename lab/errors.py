"""The one exception type the lab raises for input a user can fix."""


class LabInputError(ValueError):
    """Bad input: a wrong option, a missing dataset or weights file, a corrupt image.

    The message always names what to do instead.
    """
