"""`python -m amych_tf.train`: runs the command line of amych_tf.cli.train (the library is elsewhere)."""

from amych_tf.cli.train import console_main

if __name__ == "__main__":
    console_main()
