"""The command-line layer: thin absl wrappers over the library (parse flags -> build a config ->
call the library -> print, exit status 2 with one `error:` line for a bad input).

Only modules here read `absl.flags`; `python -m amych_tf.<command>` (the shims
amych_tf/train.py, evaluate.py, listen.py, export.py, report.py, compare.py)
and the console scripts of setup.py run their `console_main`.
"""
