// Hosts: each host's state, accelerator and QEMU, its VMs by state, and its
// memory: what the live VMs were given, what their QEMUs hold (RSS), what
// they really use (PSS), and what forks and templates save by sharing pages.
// Host memory total and free show once the daemon reports them (GET /hosts).
import { formatBytes } from '../format.ts';
import { StateBadge } from '../components.tsx';
import { useConsole, useInterval } from '../context.ts';
import { summarizeHosts } from '../hosts.ts';
import type { HostSummary } from '../hosts.ts';
import { href } from '../router.ts';

export function HostsPage() {
  const { store, state } = useConsole();
  useInterval(() => void store.refreshMemory().catch((err: unknown) => store.fail(err)), 5_000, [store]);
  const summaries = summarizeHosts(state.hosts, state.vms, state.memory);
  return (
    <section aria-labelledby="page-title">
      <div class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          Hosts <span class="count">{summaries.length}</span>
        </h1>
        {!state.capabilities.hosts && <p class="muted">This daemon runs one host. Hosts joined later show here with their state and free memory.</p>}
      </div>
      <div class="cards">
        {summaries.map((s) => (
          <HostCard key={s.host.id} summary={s} />
        ))}
      </div>
    </section>
  );
}

function HostCard({ summary: s }: { summary: HostSummary }) {
  const total = s.host.memoryTotalBytes;
  const free = s.host.memoryFreeBytes;
  return (
    <article class="card host" data-host={s.host.id} aria-labelledby={`host-${s.host.id}`}>
      <header>
        <h2 id={`host-${s.host.id}`}>{s.host.name}</h2>
        <StateBadge state={s.host.state} />
      </header>
      <dl class="facts">
        {s.host.accel && (
          <div>
            <dt>Accelerator</dt>
            <dd title={s.host.accelReason}>{s.host.accel.toUpperCase()}</dd>
          </div>
        )}
        {s.host.qemuVersion && (
          <div>
            <dt>QEMU</dt>
            <dd>{s.host.qemuVersion}</dd>
          </div>
        )}
        <div>
          <dt>VMs</dt>
          <dd>
            <a href={href({ page: 'vms' })}>{s.vms.length}</a>{' '}
            {Object.entries(s.byState).map(([state, n]) => (
              <span key={state} class="chip">
                {n} {state}
              </span>
            ))}
          </dd>
        </div>
        <div>
          <dt>Memory modes</dt>
          <dd>
            {s.owned} owned · {s.derived} derived from {s.templates} {s.templates === 1 ? 'template' : 'templates'}
          </dd>
        </div>
      </dl>
      <h3>Memory</h3>
      {total !== undefined && (
        <div class="meter" role="img" aria-label={`host memory: ${formatBytes(total - (free ?? 0))} used of ${formatBytes(total)}`}>
          <div style={{ width: `${Math.min(100, ((total - (free ?? 0)) / total) * 100)}%` }} />
        </div>
      )}
      <dl class="facts memory">
        <div>
          <dt>Host total / free</dt>
          <dd>{total !== undefined ? `${formatBytes(total)} / ${formatBytes(free)}` : 'not reported'}</dd>
        </div>
        <div>
          <dt>Given to live VMs</dt>
          <dd>{formatBytes(s.configuredBytes)}</dd>
        </div>
        <div>
          <dt>Resident (RSS)</dt>
          <dd>{formatBytes(s.rssBytes)}</dd>
        </div>
        <div>
          <dt>Really used (PSS)</dt>
          <dd>{formatBytes(s.pssBytes)}</dd>
        </div>
        <div class="saved">
          <dt>Saved by sharing</dt>
          <dd data-testid="host-saved">{formatBytes(s.savedBytes)}</dd>
        </div>
      </dl>
      {s.memoryUnknown > 0 && <p class="muted">{s.memoryUnknown} live VM(s) not measured yet.</p>}
    </article>
  );
}
