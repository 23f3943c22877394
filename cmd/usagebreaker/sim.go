package main

import "io"

// placeholder until the sim command lands (being written now; see issue notes)
func cmdSim(args []string, stdout, stderr io.Writer) int { panic("sim: not yet built") }
