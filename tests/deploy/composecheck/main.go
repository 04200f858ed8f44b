// composecheck loads a Compose file with compose-go, the library Docker Compose itself uses to
// read, interpolate, validate (against the Compose specification's JSON schema) and normalise
// compose files, and prints the resulting project as JSON on stdout.
//
// Usage: composecheck [-env KEY=VALUE]... FILE
//
// It fails (exit 1, the loader's error on stderr) on anything `docker compose config` rejects.
// The JSON is what the deployment rehearsal reads the services' commands and environment from,
// so the rehearsal runs what Compose would run, not a second reading of the YAML.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type envFlags []string

func (e *envFlags) String() string     { return strings.Join(*e, ",") }
func (e *envFlags) Set(v string) error { *e = append(*e, v); return nil }

func main() {
	var env envFlags
	flag.Var(&env, "env", "KEY=VALUE for interpolation (repeatable); the process environment is not used")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-env KEY=VALUE]... FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		[]string{flag.Arg(0)},
		cli.WithEnv(env),
		cli.WithName("citystream"),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %s: %v\n", flag.Arg(0), err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
	fmt.Println()
}
