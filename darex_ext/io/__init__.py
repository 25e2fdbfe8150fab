"""File plumbing shared by storage and pipeline: safetensors headers, dtype codes and positional
writes (`safetensors`), atomic files and directories (`atomic`)."""
