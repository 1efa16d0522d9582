"""The .espdl tools: reader, host interpreter, verify, bisect."""
