// Spring Boot, configured only from the connection Secret's keys as environment variables:
// SPRING_DATASOURCE_URL (a JDBC URL: the sidecar's sslmode=disable one, or the direct one with
// sslmode=verify-full&sslrootcert=<mounted CA>), SPRING_DATASOURCE_USERNAME and
// SPRING_DATASOURCE_PASSWORD, which relaxed binding maps to spring.datasource.*. Nothing else
// names them. Through the auto-configured DataSource (HikariCP + pgJDBC) and JdbcTemplate it
// prints one stdout line `spring-boot <current_user> <true|false>` (is the session on TLS) and
// exits 0; any failure (bad password, TLS, unreachable) exits non-zero.
package dbconn.spring;

import java.io.PrintStream;
import org.springframework.boot.CommandLineRunner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.jdbc.core.JdbcTemplate;

@SpringBootApplication
public class App implements CommandLineRunner {
  static final String QUERY = "SELECT current_user, coalesce((SELECT ssl FROM pg_stat_ssl "
      + "WHERE pid = pg_backend_pid()), false)";

  // The result line's stream: main() points System.out at stderr, so that whatever Spring,
  // HikariCP or pgJDBC log (Spring Boot 3.5 has no property to send its console log to stderr)
  // stays off stdout.
  static final PrintStream RESULT = System.out;

  private final JdbcTemplate jdbc;

  App(JdbcTemplate jdbc) {
    this.jdbc = jdbc;
  }

  @Override
  public void run(String... args) {
    String line = jdbc.queryForObject(QUERY,
        (rs, i) -> "spring-boot " + rs.getString(1) + " " + rs.getBoolean(2));
    RESULT.println(line);
  }

  public static void main(String[] args) {
    System.setOut(System.err);
    try {
      System.exit(SpringApplication.exit(SpringApplication.run(App.class, args)));
    } catch (Throwable e) { // Spring has logged the cause already
      System.err.println("spring-boot: " + e);
      System.exit(1);
    }
  }
}
