"""The evaluate stage's parts that need no model (torch-free): which checkpoints are compared
(`methods`), the statistics over images (`stats`: bootstrap CIs, paired win-rates) and the
report (`report`: the paper's table as Markdown and CSV, the image grid)."""
