"""The command line around hold_jax.main: flags and help, one-line errors naming a config field, config files,
the checks of a whole config before work starts, and the exact-score demo."""
