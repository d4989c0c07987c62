"""The web app (`vdsr serve`, the `serve` extra): requests, uploads, who may connect."""
