"""The command-line applications that drive the library: ``compress_classifier`` (train, compress,
evaluate) and ``compare`` (compare checkpoints). They own argument parsing, the run configuration
(``RunConfig``), logging set-up, progress display and run folders; ``compressor`` itself never
prints. The console scripts and the thin ``apps/*.py`` files point here.
"""
