// Command probe is the test image of tests/test_k8s_cluster_e2e.py: a static binary for a FROM
// scratch image.
//
//	probe hello            print a line and exit 0
//	probe dial HOST PORT   resolve HOST and connect to PORT (retrying for 90 s), exit 0 on success
//	probe peer PORT        serve PORT (each connection gets "pong from <hostname>"); a pod whose
//	                       name ends in -1 also dials <name>-0.<subdomain> and prints the answer
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

const retryFor = 90 * time.Second

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe hello | dial HOST PORT | peer PORT")
	}
	switch {
	case os.Args[1] == "hello":
		fmt.Println("hello from a locally built image")
	case os.Args[1] == "dial" && len(os.Args) == 4:
		fmt.Println(dial(os.Args[2], os.Args[3]))
	case os.Args[1] == "peer" && len(os.Args) == 3:
		peer(os.Args[2])
	default:
		fail("usage: probe hello | dial HOST PORT | peer PORT")
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "probe:", msg)
	os.Exit(2)
}

// dial connects to host:port, retrying until retryFor passes; it returns what it learned.
func dial(host, port string) string {
	deadline := time.Now().Add(retryFor)
	for {
		addrs, err := net.LookupHost(host)
		if err == nil {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 5*time.Second)
			if err == nil {
				defer conn.Close()
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				reply, _ := bufio.NewReader(conn).ReadString('\n')
				return fmt.Sprintf("connected to %s (%s) port %s: %s", host, strings.Join(addrs, ","),
					port, strings.TrimSpace(reply))
			}
		}
		if time.Now().After(deadline) {
			fail(fmt.Sprintf("%s port %s: %v", host, port, err))
		}
		time.Sleep(time.Second)
	}
}

// peer serves port forever; pod <set>-1 first reaches <set>-0 through the headless Service.
func peer(port string) {
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fail(err.Error())
	}
	name, _ := os.Hostname()
	go serve(ln, name)
	if set, ok := strings.CutSuffix(name, "-1"); ok {
		subdomain := os.Getenv("PEER_SUBDOMAIN")
		fmt.Println(dial(set+"-0."+subdomain, port))
	}
	select {}
}

func serve(ln net.Listener, name string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			continue
		}
		fmt.Fprintf(conn, "pong from %s\n", name)
		conn.Close()
	}
}
