"""Reports written from results.json alone: JUnit per cell, HTML, Markdown, KCIDB."""
