package main

import "io"

// placeholder until the check command lands (being written now; see issue notes)
func cmdCheck(args []string, stdout, stderr io.Writer) int { panic("check: not yet built") }
