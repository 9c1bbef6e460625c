// The driver-matrix scenario (see ../README.md) with pgx v5 and its default statement cache
// (QueryExecModeCacheStatement).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var checks atomic.Int64

func expect(what string, got, want any) error {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s: got %v, want %v", what, got, want)
	}
	checks.Add(1)
	return nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func client(ctx context.Context, id string, iterations int) error {
	conn, err := pgx.Connect(ctx, "sslmode=disable")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET application_name = '"+id+"'"); err != nil {
		return err
	}
	for i := 0; i < iterations; i++ {
		var doubled int
		var app string
		err := conn.QueryRow(ctx, "SELECT $1::int * 2, current_setting('application_name')", i).Scan(&doubled, &app)
		if err != nil {
			return err
		}
		if err := errors.Join(expect("doubled", doubled, 2*i), expect("application_name", app, id)); err != nil {
			return err
		}
		var n int
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO driver_rows (client, n) VALUES ($1, $2)", id, i); err != nil {
				return err
			}
			return tx.QueryRow(ctx, "SELECT count(*)::int FROM driver_rows WHERE client = $1", id).Scan(&n)
		})
		if err != nil {
			return err
		}
		if err := expect("rows", n, i+1); err != nil {
			return err
		}
		var x int
		err = conn.QueryRow(ctx, "SELECT 1 / ($1::int - $1::int)", i).Scan(&x)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return fmt.Errorf("division by zero: got %v", err)
		}
		if err := expect("division by zero SQLSTATE", pgErr.Code, "22012"); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	clients := envInt("DRIVER_CLIENTS", 6)
	iterations := envInt("DRIVER_ITERATIONS", 40)
	tag := os.Getenv("DRIVER_TAG")
	if tag == "" {
		tag = "pgx"
	}
	ctx := context.Background()
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			errs[c] = client(ctx, fmt.Sprintf("%s-%d", tag, c), iterations)
		}(c)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "pgx:", err)
		os.Exit(1)
	}
	fmt.Printf("checks=%d\n", checks.Load())
}
