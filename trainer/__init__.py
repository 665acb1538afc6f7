"""trainer: learns the feature network (triplet loss), fits product bundles, evaluates, exports.

Imports torch. Depends on ``linewatch.bundle`` and ``linewatch.inference.preprocessing``, never the reverse.
"""

__version__ = "0.1.0"
