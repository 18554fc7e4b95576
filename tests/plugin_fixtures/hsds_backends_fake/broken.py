"""A plugin whose import fails, as a plugin with a missing dependency would."""

import hsds_backends_fake_missing_dependency  # noqa: F401
