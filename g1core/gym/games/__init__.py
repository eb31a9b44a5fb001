"""One file per game: the rules, the text view, the tiles' pictures and an oracle strategy."""
