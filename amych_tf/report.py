"""`python -m amych_tf.report`: runs the command line of amych_tf.cli.report (the library is elsewhere)."""

from amych_tf.cli.report import console_main

if __name__ == "__main__":
    console_main()
