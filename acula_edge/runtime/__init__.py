"""Device runtime: load a bundle, run it on its backend, stream live audio. numpy + one runtime, never torch."""
