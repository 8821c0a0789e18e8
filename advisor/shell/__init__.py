"""The shell: the command line (one module per command under ``cli/``), the reports
(one module per report under ``render/``), JSON output and start-up set-up. The only
layer that prints or exits."""
