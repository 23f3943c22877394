package main

import "io"

func cmdRun(args []string, stdout, stderr io.Writer) int         { panic("run: not yet built") }
func cmdDemo(args []string, stdout, stderr io.Writer) int        { panic("demo: not yet built") }
func cmdHealthcheck(args []string, stdout, stderr io.Writer) int { panic("healthcheck: not yet built") }
