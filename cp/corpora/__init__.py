"""Corpora shipped with cp (compressed); see cp.data.BUNDLED."""
