"""Reading and writing user data: tables, labels, tokenizers, language-model text streams."""
