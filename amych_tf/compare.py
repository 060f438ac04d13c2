"""`python -m amych_tf.compare`: runs the command line of amych_tf.cli.compare (the library is elsewhere)."""

from amych_tf.cli.compare import console_main

if __name__ == "__main__":
    console_main()
