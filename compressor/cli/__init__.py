"""Command-line applications. They own argument parsing, logging setup and output folders; the
library they drive never prints."""
