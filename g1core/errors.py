"""The base of every error that means "the input or the environment is wrong", not "g1 has a bug".

The CLI prints these as one clear line and exits 2; anything else keeps its traceback.
"""


class G1Error(Exception):
    """A problem the user can fix: a bad config, a missing bucket, a refused API key, a busy port."""
