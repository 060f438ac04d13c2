"""`python -m amych_tf.listen`: runs the command line of amych_tf.cli.listen (the library is elsewhere)."""

from amych_tf.cli.listen import console_main

if __name__ == "__main__":
    console_main()
