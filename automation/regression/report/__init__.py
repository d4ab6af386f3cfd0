"""The joined accuracy x performance report: its renderers (format, markdown, console, svg), one
module per output, and its ClearML form (clearml). The data model is automation/regression/report_model.py."""
