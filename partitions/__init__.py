"""Models as ordered lists of named blocks; every block boundary is a split point."""
