// Memory templates: immutable guest-RAM files that fork children (and the
// resumed source) map privately (memory-backend-file share=off), so the kernel
// shares every page nobody wrote. A VM's own RAM file becomes a template by a
// hard link taken while the VM still runs (same inode, no copy), frozen once
// the VM's QEMU has stopped writing it. Templates are reference-counted by the VMs whose
// QEMU maps them, and removed when the last one is gone.
import { randomUUID } from 'node:crypto';
import { chmod, link, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

export class TemplateStore {
  readonly dir: string;

  constructor(memoryDir: string) {
    this.dir = join(memoryDir, 'templates');
  }

  path(templateId: string): string {
    return join(this.dir, `${templateId}.ram`);
  }

  /**
   * Makes a template of a RAM file that is still in use, by a hard link (same inode, no copy). The
   * caller must stop every writer of the file before anything maps the template, then call freeze().
   */
  async link(ramFile: string): Promise<{ templateId: string; file: string }> {
    await mkdir(this.dir, { recursive: true });
    const templateId = randomUUID();
    const file = this.path(templateId);
    await link(ramFile, file);
    return { templateId, file };
  }

  /** Marks a linked template immutable once its last writer has stopped. */
  async freeze(templateId: string): Promise<void> {
    await chmod(this.path(templateId), 0o400);
  }

  /** Removes one template (its name; mappings keep the pages until they end). */
  async remove(templateId: string): Promise<void> {
    await rm(this.path(templateId), { force: true });
  }

  async list(): Promise<Array<{ templateId: string; file: string; bytes: number }>> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const out = [];
    for (const name of names) {
      if (!name.endsWith('.ram')) continue;
      const file = join(this.dir, name);
      const info = await stat(file).catch(() => undefined);
      if (info) out.push({ templateId: name.slice(0, -4), file, bytes: info.blocks * 512 });
    }
    return out;
  }

  /** Removes every template not in `inUse`; returns the removed ids. */
  async release(inUse: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const t of await this.list()) {
      if (inUse.has(t.templateId)) continue;
      await rm(t.file, { force: true });
      removed.push(t.templateId);
    }
    return removed;
  }
}
