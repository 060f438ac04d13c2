"""Atomic output directories for the dataset tools (make_demo, render_soundfont)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator


@contextlib.contextmanager
def staged_directory(out_dir: str, *, overwrite: bool, is_previous_output: Callable[[str], bool]) -> Iterator[str]:
    """Yield a fresh directory beside `out_dir` that replaces `out_dir` when the block succeeds.

    Refuses (FileExistsError, before any work) to replace a non-empty `out_dir`
    unless `is_previous_output(out_dir)` or `overwrite`. The staging directory
    lives in the same parent, so the final step is a rename; on any error it is
    removed and `out_dir` is left untouched.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"{out_dir!r} exists and is not a directory")
        if os.listdir(out_dir) and not overwrite and not is_previous_output(out_dir):
            raise FileExistsError(
                f"{out_dir!r} is not empty and was not written by this tool; pass --overwrite to replace it"
            )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        if os.path.exists(out_dir):
            retired = staging + "-old"
            os.rename(out_dir, retired)
            os.rename(staging, out_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
