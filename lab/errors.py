"""The one exception type the lab raises for input a user can fix, and the warning about data it can use."""


class LabInputError(ValueError):
    """Bad input: a wrong option, a missing dataset or weights file, a corrupt image.

    The message always names what to do instead.
    """


class DataWarning(UserWarning):
    """Data the lab can use but whose figures a reader should doubt (a class with no validation
    image); the session's report lists every one, as the terminal does."""
