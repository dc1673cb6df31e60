"""Host facilities every stage uses: the content-addressed cache, host tools and packages,
Debian packages as artefacts."""
