"""Production setup tooling (Fly.io). Not part of the runtime package or the image."""
