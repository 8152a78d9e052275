"""mixvae's Hydra launcher plugin: ``hydra/launcher=subprocess`` (see subprocess_launcher.py)."""
