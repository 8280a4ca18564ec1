"""The Olive family: any pass of olive-ai 0.13 as a step (`type: olive`), run on this workflow's artifacts."""
