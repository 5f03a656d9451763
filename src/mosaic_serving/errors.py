"""The one exception type for bad user input.

Handlers raise it with a message that names the offending field; the Triton adapter turns it
into an INVALID_ARGUMENT response, while any other exception becomes INTERNAL.
"""


class InvalidRequestError(ValueError):
    """A request field is missing, of the wrong type, out of range or unknown."""
