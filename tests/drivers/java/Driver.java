// The driver-matrix scenario (see ../README.md) with pgJDBC and prepareThreshold=1 (a named
// server-side statement from the first execution).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;

public class Driver {
    static final AtomicLong checks = new AtomicLong();

    static void expect(String what, Object got, Object want) {
        if (!String.valueOf(got).equals(String.valueOf(want))) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
        checks.incrementAndGet();
    }

    static int env(String name, int def) {
        String v = System.getenv(name);
        return v == null ? def : Integer.parseInt(v);
    }

    static void client(String id, int iterations) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGUSER"));
        props.setProperty("password", System.getenv("PGPASSWORD"));
        props.setProperty("prepareThreshold", "1");
        props.setProperty("sslmode", "disable");
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            try (Statement s = conn.createStatement()) {
                s.execute("SET application_name = '" + id + "'");
            }
            PreparedStatement doubled = conn.prepareStatement(
                    "SELECT ?::int * 2, current_setting('application_name')");
            PreparedStatement insert = conn.prepareStatement(
                    "INSERT INTO driver_rows (client, n) VALUES (?, ?)");
            PreparedStatement count = conn.prepareStatement(
                    "SELECT count(*)::int FROM driver_rows WHERE client = ?");
            PreparedStatement divide = conn.prepareStatement("SELECT 1 / (?::int - ?::int)");
            for (int i = 0; i < iterations; i++) {
                doubled.setInt(1, i);
                try (ResultSet r = doubled.executeQuery()) {
                    r.next();
                    expect("doubled", r.getInt(1), 2 * i);
                    expect("application_name", r.getString(2), id);
                }
                conn.setAutoCommit(false);
                insert.setString(1, id);
                insert.setInt(2, i);
                insert.executeUpdate();
                count.setString(1, id);
                int n;
                try (ResultSet r = count.executeQuery()) {
                    r.next();
                    n = r.getInt(1);
                }
                conn.commit();
                conn.setAutoCommit(true);
                expect("rows", n, i + 1);
                divide.setInt(1, i);
                divide.setInt(2, i);
                try {
                    divide.executeQuery().close();
                    throw new AssertionError("division by zero succeeded");
                } catch (SQLException e) {
                    expect("division by zero SQLSTATE", e.getSQLState(), "22012");
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        int clients = env("DRIVER_CLIENTS", 6);
        int iterations = env("DRIVER_ITERATIONS", 40);
        String tag = System.getenv().getOrDefault("DRIVER_TAG", "pgjdbc");
        List<Thread> threads = new ArrayList<>();
        List<Throwable> failures = java.util.Collections.synchronizedList(new ArrayList<>());
        for (int c = 0; c < clients; c++) {
            String id = tag + "-" + c;
            Thread t = new Thread(() -> {
                try {
                    client(id, iterations);
                } catch (Throwable e) {
                    failures.add(e);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        if (!failures.isEmpty()) {
            for (Throwable e : failures) {
                e.printStackTrace();
            }
            System.exit(1);
        }
        System.out.println("checks=" + checks.get());
    }
}
