"""`python -m amych_tf.evaluate`: runs the command line of amych_tf.cli.evaluate (the library is elsewhere)."""

from amych_tf.cli.evaluate import console_main

if __name__ == "__main__":
    console_main()
