# Rails (railties + Active Record 6.1, PostgreSQL adapter over ruby-pg/libpq), configured only
# from the connection Secret's keys in the environment, unedited, the way a Rails app takes them:
# a minimal Rails::Application whose root has no config/database.yml, so Rails' own
# database_configuration falls back to ENV['DATABASE_URL'] (`postgresql://` scheme, percent-encoded
# user and password, query parameters such as sslmode/sslrootcert passed on to libpq).
#
#   rails          DATABASE_URL (the Secret's uri, through the sidecar)
#   rails-direct   DIRECT_URL, if set (the Secret's direct-uri: verify-full with the mounted CA),
#                  checked as teams run migrations: this script re-runs itself with
#                  DATABASE_URL set to DIRECT_URL, so Rails resolves it by the same path.
#
# Prints `<name> <current_user> <ssl>` per URL on stdout; exits non-zero on any failure.
# Run: ruby tests/frameworks/rails_client.rb   (Debian: ruby ruby-pg ruby-activerecord ruby-railties)

require "fileutils"
require "logger"
require "rbconfig"
require "tmpdir"
require "rails"
require "active_record/railtie"

QUERY = "SELECT current_user, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)"
NAME = ARGV[0] || "rails"
ROOT = Dir.mktmpdir("dbconn-rails")
at_exit { FileUtils.remove_entry(ROOT) }

class DbconnRailsCheck < Rails::Application
  config.root = ROOT # no config/database.yml here: Rails falls back to DATABASE_URL
  config.eager_load = false
  config.logger = Logger.new($stderr)
  config.log_level = :warn
  config.active_support.deprecation = :stderr
end

abort "#{NAME}: DATABASE_URL is not set" if ENV["DATABASE_URL"].to_s.empty?
begin
  Rails.application.initialize!
  conn = ActiveRecord::Base.connection
  user, ssl = conn.select_rows(QUERY).first
  # A query with a bind, twice: Active Record prepares it (prepared_statements is on by
  # default) and reuses the statement, which the sidecar must carry across server connections.
  bind = [ActiveRecord::Relation::QueryAttribute.new("n", 41, ActiveRecord::Type::Integer.new)]
  2.times do
    got = conn.select_value("SELECT $1::int + 1", "bind", bind)
    raise "a prepared query returned #{got.inspect}, not 42" unless got.to_i == 42
  end
  ssl = ActiveModel::Type::Boolean.new.cast(ssl) ? true : false
  $stdout.puts "#{NAME} #{user} #{ssl}"
  $stdout.flush
rescue StandardError => e
  warn "#{NAME}: #{e.class}: #{e.message}"
  exit 1
end

if ARGV.empty? && !ENV["DIRECT_URL"].to_s.empty?
  ok = system({ "DATABASE_URL" => ENV["DIRECT_URL"] }, RbConfig.ruby, __FILE__, "rails-direct")
  exit 1 unless ok
end
