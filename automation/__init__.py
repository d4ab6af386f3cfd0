"""LLM compression workflows: the ClearML side (specs, core scripts, standards, local stack)."""

import warnings

# requests warns on every import that this (tested, pinned) urllib3/chardet pair is newer than it
# knows; it is noise in every CLI call and task log.
warnings.filterwarnings("ignore", message=r"urllib3 .* doesn't match a supported version")
