"""``python -m mars_jax.data.synth --preview grid.png ...``: see ``preview.main``."""

from mars_jax.data.synth.preview import main

main()
