"""`python -m amych_tf.export`: runs the command line of amych_tf.cli.export (the library is elsewhere)."""

from amych_tf.cli.export import console_main

if __name__ == "__main__":
    console_main()
