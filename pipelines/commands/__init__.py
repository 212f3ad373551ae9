"""One module per `txl` command: parse the options, resolve them once, call the layers below."""
